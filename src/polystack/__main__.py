from polystack.cli import main

main()
