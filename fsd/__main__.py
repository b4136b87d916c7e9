from fsd.entry import main

main()
