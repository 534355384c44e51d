"""`python -m vislang.shared` is the `lightning` command, for machines where another package
(lightning-sdk) also installs a `lightning` executable."""

from vislang.shared.cli import main

if __name__ == "__main__":
    main()
