from hf_eenet.cli import main

main()
