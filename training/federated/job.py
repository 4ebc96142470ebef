"""What one federated run is: the training configs, the rounds and the aggregation,
carried to the server and every site in Flower's run config (flat scalars)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

STRATEGIES = ("fedavg", "fedprox", "fedadam")


@dataclass(frozen=True)
class FederatedJob:
    # The YAML texts of the configs, in `radfusion train --config` order: the sites run
    # the model the federation defines, whatever files they have.
    configs: tuple[str, ...]
    out: str  # the server's run folder (checkpoint, provenance, resume state)
    rounds: int = 3
    local_epochs: int = 1
    min_sites: int = 3
    strategy: str = "fedavg"
    proximal_mu: float = 0.01  # FedProx's proximal term weight
    server_lr: float = 0.01  # FedAdam's server learning rate (eta)
    secagg: bool = True
    # SecAgg+ quantises each value into [-clip, clip]: a site refuses to send an update
    # with a value outside it rather than have it clipped silently.
    secagg_clip: float = 8.0
    # Client-side differential privacy: each site clips its update to dp_clip (L2) and
    # adds Gaussian noise of std dp_noise * dp_clip; 0: off.
    dp_noise: float = 0.0
    dp_clip: float = 1.0
    dp_delta: float = 1e-5
    seed: int = 0
    # How long the server waits for the sites to connect and to answer the first round.
    site_wait: float = 600.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.rounds < 1 or self.local_epochs < 1 or self.min_sites < 1:
            raise ValueError("rounds, local epochs and the number of sites must be at least 1")
        if self.dp_noise < 0 or self.dp_clip <= 0 or not 0 < self.dp_delta < 1:
            raise ValueError("dp noise must be >= 0, the clip > 0 and delta in (0, 1)")
        if self.secagg and self.min_sites < 3:
            # With two, each site could subtract its own update from the sum it is part of.
            raise ValueError(f"SecAgg+ needs at least 3 sites, not {self.min_sites}: add a site or pass --no-secagg")
        if self.site_wait <= 0:
            raise ValueError("the wait for sites must be positive")

    @classmethod
    def from_files(cls, configs: list[Path], **options) -> FederatedJob:
        return cls(configs=tuple(Path(c).read_text() for c in configs), **options)

    def run_config(self) -> dict[str, str | int | float | bool]:
        """Flower's run config holds scalars: the configs travel as one JSON string."""
        fields = dataclasses.asdict(self)
        fields["configs"] = json.dumps(list(self.configs))
        return {name.replace("_", "-"): value for name, value in fields.items()}

    @classmethod
    def from_run_config(cls, config: dict) -> FederatedJob:
        names = {f.name for f in dataclasses.fields(cls)}
        fields = {k.replace("-", "_"): v for k, v in config.items() if k.replace("-", "_") in names}
        fields["configs"] = tuple(json.loads(fields["configs"]))
        return cls(**fields)

    def cli_configs(self) -> list[str]:
        """The `--config` arguments of radfusion train (jsonargparse takes YAML text)."""
        return [a for text in self.configs for a in ("--config", text)]
