from esus_dev.bench.main import main

main()
