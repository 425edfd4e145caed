from runrec_cluster.cli._common import main

main()
