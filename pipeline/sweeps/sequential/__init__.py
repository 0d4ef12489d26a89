"""hydra/sweeper=sequential: seeds added in batches until every comparison of every variant is
settled (pipeline/report/sequential.py decides), through whatever launcher is set.

study.py holds one variant's seeds and verdicts; sweeper.py is the Hydra Sweeper; plugin/ is the
shim that Hydra instantiates (its class must live in the `hydra_plugins` namespace package). It
sits above report/ in the layers because it decides with report/'s statistics.
"""
