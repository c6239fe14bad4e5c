from npnn.figures import main

main()
