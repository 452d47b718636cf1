from mrw.cli import main

main()
