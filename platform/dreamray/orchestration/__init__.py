"""The recipe DAG: planning, the stage ledger, the stage-I merge and the stage launcher."""
