"""Runnable studies; configs live in experiments/configs/. ``fedsim experiment NAME`` runs the studies below."""

# name -> (module in experiments/, what it answers); the module's config is configs/<name>.toml
STUDIES = {
    "fedpca_clients": ("fedpca_clients", "federated PCA on NSL-KDD: AUC, F1, time and bytes vs the number of clients"),
    "gossip_clients": ("gossip_clients", "plain vs variance-corrected gossip vs FedAvg: accuracy, rounds to target"),
    "topologies": ("topology_sweep", "consensus rate (measured vs spectral gap) and gossip accuracy across graphs"),
    "vanishing_variance": ("vanishing_variance", "FL vs plain vs variance-corrected asynchronous gossip in ticks"),
    "leakage_defences": ("leakage_study", "gradient-inversion leakage vs defence strength, and its accuracy cost"),
}


def study(name: str):
    """The module of study ``name`` (``fedsim.config.ConfigError`` naming the known ones if there is none)."""
    import importlib

    from fedsim.config import ConfigError

    if name not in STUDIES:
        import difflib

        close = difflib.get_close_matches(name, list(STUDIES), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown study {name!r}{hint}; known: {', '.join(STUDIES)} (see fedsim experiment --list)")
    return importlib.import_module(f"experiments.{STUDIES[name][0]}")
