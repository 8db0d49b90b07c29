from valleys.cli import main

main()
