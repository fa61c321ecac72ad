from benchbase.cli import main

main()
