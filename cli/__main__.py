from flowlog.cli.main import main

main(prog_name="flowlog")
