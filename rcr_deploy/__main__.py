from rcr_deploy.cli import main

main()
