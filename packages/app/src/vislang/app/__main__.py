from vislang.app.cli import main

main()
