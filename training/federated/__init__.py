"""`radfusion federate`: hospitals train one radfusion model together on Flower.

Each site trains radfusion's own FusionModule on its own cohort (the configs of
`radfusion train`); only aggregated preprocessing moments (first round) and model
weights leave a site. The server pools the moments into one panel and missing-data
policy, aggregates the weights (FedAvg, FedProx or FedAdam, under SecAgg+ when asked)
and writes an ordinary radfusion checkpoint for `radfusion export`.

Flower pins versions BentoML's stack cannot share, so this package runs in its own
environment (.venv-federate); nothing else in radfusion imports it."""
