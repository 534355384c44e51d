"""The page: one Gradio tab per model, each calling the functions of its `*_tab` module.

Each tab loads its checkpoint on first use (and keeps it), says which checkpoint it serves or which command
makes one, and answers bad input in its status line instead of raising. Everything it writes (overlays,
thumbnails, Gradio's upload cache) goes into one temporary folder, deleted when the app stops.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from vislang.app.checkpoints import Resolved, resolve_checkpoint
from vislang.app.cmae_tab import load_cmae, reconstruct
from vislang.app.inputs import InputError, check_video, load_upload
from vislang.app.pixellm_tab import load_pixellm, run_pixellm
from vislang.app.vlab_tab import describe_video, load_vlab, rank_videos
from vislang.app.vqa_tab import VQAPredictor

__all__ = ["AppConfig", "build_app", "THEME"]

# system fonts only: the default theme would ask a web font service for "Inter" (nothing leaves this machine)
# a handler whose parameter defaults to a gr.Progress gets a progress bar of its own request from Gradio
PROGRESS = gr.Progress()
THEME = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


@dataclass
class AppConfig:
    """Checkpoint flags as given (None: the demo's), where the demos ran, the VLAB folder, the temp folder."""

    out_dir: Path
    demo_root: Path = Path(".")
    pixellm_ckpt: str | None = None
    vlab_ckpt: str | None = None
    vqa_ckpt: str | None = None
    vqa_detector: str | None = None
    cmae_ckpt: str | None = None
    vlab_videos: str | None = None


class _Lazy:
    """A model loaded on first use, once, from a resolved checkpoint; a load failure is kept as a message."""

    def __init__(self, resolved: Resolved, loader: Callable[[Path], Any]) -> None:
        self.resolved, self.loader = resolved, loader
        self._model: Any = None
        self._error: str | None = None
        self._lock = threading.Lock()

    def get(self, progress: Any = None) -> Any:
        if self.resolved.path is None:
            raise InputError(self.resolved.message)
        with self._lock:
            if self._model is None and self._error is None:
                if progress is not None:
                    progress(0.0, desc=f"loading {self.resolved.path.name}")
                try:
                    self._model = self.loader(self.resolved.path)
                except Exception as error:  # noqa: BLE001 (a wrong or broken checkpoint: said in the page)
                    self._error = f"{self.resolved.path}: cannot load ({str(error).splitlines()[0][:300]})"
            if self._error is not None:
                raise InputError(self._error)
            return self._model


def _ok(notes: list[str]) -> str:
    return "Done." + (" " + "; ".join(notes) + "." if notes else "")


def _bad(error: Exception) -> str:
    if isinstance(error, ValueError):  # InputError and the packages' own one-line messages
        return f"**Cannot do that:** {error}"
    first = str(error).splitlines()[0][:300] if str(error) else ""
    return f"**Cannot do that:** {type(error).__name__}: {first}"


def _status(resolved: Resolved) -> str:
    return ("Checkpoint: " if resolved.path else "**No model yet.** ") + resolved.message


def build_app(config: AppConfig) -> gr.Blocks:
    """The Blocks of the page (not launched)."""
    out = config.out_dir
    root = config.demo_root
    pixellm = _Lazy(resolve_checkpoint("pixellm", config.pixellm_ckpt, root), load_pixellm)
    vlab = _Lazy(resolve_checkpoint("vlab", config.vlab_ckpt, root), load_vlab)
    cmae = _Lazy(resolve_checkpoint("cmae", config.cmae_ckpt, root), load_cmae)
    vqa_weights = resolve_checkpoint("vqa", config.vqa_ckpt, root)
    detector = resolve_checkpoint("vqa_detector", config.vqa_detector, root)
    if vqa_weights.path is not None and detector.path is None:
        vqa_weights = Resolved(None, detector.message)
    vqa = _Lazy(vqa_weights, lambda path: VQAPredictor(path, detector.path))
    videos_default = config.vlab_videos
    if videos_default is None and (root / "demo_outputs/vlab/msrvtt/videos").is_dir():
        videos_default = str(root / "demo_outputs/vlab/msrvtt/videos")

    def segment(image_file: str | None, question: str, progress: Any = PROGRESS) -> tuple[Any, str, str]:
        try:
            model = pixellm.get(progress)
            image = load_upload(image_file)
            progress(0.3, desc="generating the answer and the masks")
            result = run_pixellm(model, image, question, out)
        except Exception as error:  # noqa: BLE001 (answered in the page; the worker stays free)
            return None, "", _bad(error)
        return str(result.overlay), result.legend_html(), _ok(result.notes)

    def rank(folder: str, sentence: str, progress: Any = PROGRESS) -> tuple[Any, str, Any, str]:
        try:
            model = vlab.get(progress)
            ranking = rank_videos(model, folder, sentence, out, progress=lambda f, d: progress(f, desc=d))
        except Exception as error:  # noqa: BLE001 (answered in the page; the worker stays free)
            return [], "", gr.update(choices=[], value=None), _bad(error)
        gallery = [(str(r.thumbnail), f"{k + 1}. {r.path.name}  {r.score:+.3f}") for k, r in enumerate(ranking.videos)]
        rows = "".join(f"| {k + 1} | {r.path.name} | {r.score:+.4f} |\n" for k, r in enumerate(ranking.videos))
        table = "| rank | video | cosine with the sentence |\n|---|---|---|\n" + rows
        notes = list(ranking.notes)
        if ranking.skipped:
            notes.append(
                f"skipped {len(ranking.skipped)} video(s) that cannot be decoded: {', '.join(ranking.skipped)}"
            )
        choices = [(r.path.name, str(r.path)) for r in ranking.videos]
        return gallery, table, gr.update(choices=choices, value=choices[0][1]), _ok(notes)

    def describe(
        picked: str | None, uploaded: str | None, task: str, question: str, progress: Any = PROGRESS
    ) -> tuple[str, str]:
        try:
            model = vlab.get(progress)
            video = uploaded or picked
            check_video(video)
            progress(0.5, desc=f"{task} with the decoder")
            text = describe_video(model, video, task, question)
        except Exception as error:  # noqa: BLE001 (answered in the page; the worker stays free)
            return "", _bad(error)
        notes = []
        wanted = "caption" if task == "caption" else "qa"
        if wanted not in model.tasks:
            notes.append(f"this checkpoint was trained on {', '.join(model.tasks)}, not {wanted}: expect poor text")
        return text, _ok(notes)

    def answer_vqa(image_file: str | None, question: str, progress: Any = PROGRESS) -> tuple[str, str]:
        try:
            predictor = vqa.get(progress)
            image = load_upload(image_file)
            progress(0.3, desc="detector features, then each member")
            result = predictor.predict(image, question)
        except Exception as error:  # noqa: BLE001 (answered in the page; the worker stays free)
            return "", _bad(error)
        lines = [f"## {html.escape(result.answer)}", "", "| ensemble | score |", "|---|---|"]
        lines += [f"| {html.escape(a)} | {s:.3f} |" for a, s in result.ensemble_top]
        for member in result.members:
            lines += [
                "",
                f"**{member['name']}**, ensemble weight {member['weight']:.2f}",
                "",
                "| answer | sigmoid score |",
                "|---|---|",
            ]
            lines += [f"| {html.escape(a)} | {s:.3f} |" for a, s in member["top"]]
        weights = " / ".join(f"{w:.2f}" for w in result.weights)
        return "\n".join(lines), _ok([f"ensemble weights {weights} (fitted on validation)", *result.notes])

    def reconstruct_image(
        image_file: str | None, ratio: float, seed: float, progress: Any = PROGRESS
    ) -> tuple[Any, Any, Any, str]:
        try:
            module = cmae.get(progress)
            image = load_upload(image_file)
            result = reconstruct(module, image, ratio, int(seed or 0))
        except Exception as error:  # noqa: BLE001 (answered in the page; the worker stays free)
            return None, None, None, _bad(error)
        return result.masked, result.reconstruction, result.target, _ok(result.notes)

    with gr.Blocks(title="vislang", analytics_enabled=False) as app:
        gr.Markdown(
            "# vislang\nTry the re-implemented models on your own pictures and videos. Everything runs "
            "on this computer (CPU); uploads stay in a temporary folder deleted when the app stops."
        )
        with gr.Tab("PixelLM", id="pixellm"):
            gr.Markdown(_status(pixellm.resolved), elem_id="pixellm-checkpoint")
            with gr.Row():
                with gr.Column():
                    p_image = gr.File(
                        label="Image (PNG, JPEG, WebP, BMP, ...)", type="filepath", elem_id="pixellm-image"
                    )
                    p_question = gr.Textbox(
                        label="Question", placeholder="which shapes are red?", elem_id="pixellm-question"
                    )
                    p_button = gr.Button("Segment", variant="primary", elem_id="pixellm-run")
                with gr.Column():
                    p_overlay = gr.Image(
                        label="Masks over the image", type="filepath", interactive=False, elem_id="pixellm-overlay"
                    )
                    p_legend = gr.HTML(elem_id="pixellm-legend-box")
            p_status = gr.Markdown(elem_id="pixellm-status")
            p_button.click(segment, [p_image, p_question], [p_overlay, p_legend, p_status])
        with gr.Tab("VLAB", id="vlab"):
            gr.Markdown(_status(vlab.resolved), elem_id="vlab-checkpoint")
            with gr.Row():
                v_folder = gr.Textbox(
                    label="Folder of videos on this computer", value=videos_default, elem_id="vlab-folder"
                )
                v_sentence = gr.Textbox(
                    label="Sentence", placeholder="a red circle moves left", elem_id="vlab-sentence"
                )
            v_rank = gr.Button("Rank the videos", variant="primary", elem_id="vlab-run")
            v_gallery = gr.Gallery(
                label="Best match first (middle frame, cosine)", columns=6, height=260, elem_id="vlab-gallery"
            )
            v_table = gr.Markdown(elem_id="vlab-table")
            with gr.Row():
                v_pick = gr.Dropdown(label="Video from the ranking", choices=[], elem_id="vlab-pick")
                v_upload = gr.File(label="... or upload a video", type="filepath", elem_id="vlab-upload")
                v_task = gr.Radio(["caption", "answer"], value="answer", label="Task", elem_id="vlab-task")
                v_question = gr.Textbox(label="Question (for answer)", elem_id="vlab-question")
            v_describe = gr.Button("Caption / answer", elem_id="vlab-describe")
            v_text = gr.Textbox(label="Generated text", interactive=False, elem_id="vlab-text")
            v_status = gr.Markdown(elem_id="vlab-status")
            v_rank.click(rank, [v_folder, v_sentence], [v_gallery, v_table, v_pick, v_status])
            v_describe.click(describe, [v_pick, v_upload, v_task, v_question], [v_text, v_status])
        with gr.Tab("VQA entry", id="vqa"):
            gr.Markdown(_status(vqa.resolved), elem_id="vqa-checkpoint")
            with gr.Row():
                with gr.Column():
                    q_image = gr.File(label="Image", type="filepath", elem_id="vqa-image")
                    q_question = gr.Textbox(
                        label="Question", placeholder="how many circles are there?", elem_id="vqa-question"
                    )
                    q_button = gr.Button("Answer", variant="primary", elem_id="vqa-run")
                q_answer = gr.Markdown(elem_id="vqa-answer")
            q_status = gr.Markdown(elem_id="vqa-status")
            q_button.click(answer_vqa, [q_image, q_question], [q_answer, q_status])
        with gr.Tab("CMAE", id="cmae"):
            gr.Markdown(_status(cmae.resolved), elem_id="cmae-checkpoint")
            with gr.Row():
                c_image = gr.File(label="Image", type="filepath", elem_id="cmae-image")
                c_ratio = gr.Slider(0.05, 0.95, value=0.65, step=0.05, label="Mask ratio", elem_id="cmae-ratio")
                c_seed = gr.Number(value=0, precision=0, label="Mask seed", elem_id="cmae-seed")
            c_button = gr.Button("Mask and reconstruct", variant="primary", elem_id="cmae-run")
            with gr.Row():
                c_masked = gr.Image(label="Masked input", interactive=False, elem_id="cmae-masked")
                c_recon = gr.Image(label="Reconstruction", interactive=False, elem_id="cmae-reconstruction")
                c_target = gr.Image(label="Target", interactive=False, elem_id="cmae-target")
            c_status = gr.Markdown(elem_id="cmae-status")
            c_button.click(reconstruct_image, [c_image, c_ratio, c_seed], [c_masked, c_recon, c_target, c_status])
    return app
