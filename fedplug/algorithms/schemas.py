"""Config sections of the built-in algorithms (FederatedScope's key names).

Only the schemas live here, so `fedplug config show` lists every key; an algorithm's code is
imported only when it is switched on.
"""
from __future__ import annotations

from fedplug.config.schema import Key, Section, register_alias, register_section

_positive = dict(check=lambda v: v > 0, check_msg="> 0")
_non_negative = dict(check=lambda v: v >= 0, check_msg=">= 0")


def _use(name: str) -> Key:
    return Key(False, f"switch {name} on (same as federate.method: {name})")


register_section("fedopt", Section("FedOpt: a server optimizer on the pseudo-gradient (Reddi et al. 2021)", {
    "use": _use("FedOpt"),
    "optimizer": Section("the server optimizer, persistent across rounds", {
        "type": Key("SGD", "server optimizer", choices=("SGD", "Adam", "Adagrad", "Yogi")),
        "lr": Key(1.0, "server learning rate", **_positive),
        "momentum": Key(0.0, "SGD momentum", **_non_negative),
        "betas": Key([0.9, 0.99], "Adam/Yogi moment decay rates (beta1, beta2)", type=list, item_type=float,
                     check=lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), check_msg="two values in [0, 1)"),
        "eps": Key(1e-3, "adaptivity (tau in the paper) of Adam, Adagrad and Yogi", **_positive),
    }),
}))

register_section("fedprox", Section("FedProx: a proximal term toward the received model (Li et al. 2020)", {
    "use": _use("FedProx"),
    "mu": Key(0.0, "weight of the proximal term mu/2 * ||w - w_global||^2", **_non_negative),
}))

register_section("fedbn", Section("FedBN: normalization layers stay local (Li et al. 2021)", {
    "use": _use("FedBN"),
}))

register_section("personalization", Section("shared keys of the personalized algorithms (FedBN, pFedMe, Ditto)", {
    "local_param": Key([], "name patterns of parameters kept on the client (never uploaded, never overwritten)",
                       type=list, item_type=str),
    "K": Key(5, "pFedMe: inner steps solving for the personalized model", **_positive),
    "lr": Key(-1.0, "pFedMe personalized / Ditto personal learning rate; <= 0: train.optimizer.lr"),
    "regular_weight": Key(0.1, "lambda: pull of the personal model toward the local/global one", **_non_negative),
    "beta": Key(1.0, "pFedMe: server interpolation new = (1 - beta) * old + beta * average",
                check=lambda v: 0 < v <= 1, check_msg="in (0, 1]"),
    "local_update_steps": Key(-1, "Ditto: personal-model steps per round; <= 0: train.local_update_steps"),
}))

_SEMANTICS = ("paper", "federatedscope")

register_section("pfedme", Section("pFedMe: Moreau-envelope personalization (Dinh et al. 2020)", {
    "use": _use("pFedMe"),
    "semantics": Key("paper", "paper: Algorithm 1 (w moves after each batch's K inner steps, clients judged by "
                     "theta); federatedscope: FederatedScope's trainer_pFedMe.py (K calls per batch, w moves once "
                     "per epoch, clients judged by the global model; runs sequentially)", choices=_SEMANTICS),
}))

register_section("ditto", Section("Ditto: a personal model per client kept across rounds (Li et al. 2021)", {
    "use": _use("Ditto"),
    "semantics": Key("paper", "paper: Algorithm 1 (all personal steps, then the global ones); federatedscope: "
                     "FederatedScope's trainer_Ditto.py (personal then global batches within each epoch, personal "
                     "model starting from the initial model; runs sequentially)", choices=_SEMANTICS),
}))

register_section("fedem", Section("FedEM: a mixture of component models per client (Marfoq et al. 2021)", {
    "use": _use("FedEM"),
    "num_models": Key(3, "M, the number of component models", **_positive),
}))
register_alias("model.model_num_per_trainer", "fedem.num_models")

register_section("scaffold", Section("SCAFFOLD: control variates correct client drift (Karimireddy et al. 2020)", {
    "use": _use("SCAFFOLD"),
}))

register_section("fednova", Section("FedNova: normalized averaging of local updates (Wang et al. 2020)", {
    "use": _use("FedNova"),
}))

register_section("feddyn", Section("FedDyn: dynamic regularization toward the global optimum (Acar et al. 2021)", {
    "use": _use("FedDyn"),
    "alpha": Key(0.01, "alpha, weight of the dynamic regularizer (0: FedAvg exactly)", **_non_negative),
}))

register_section("dp", Section("DP-FedAvg: user-level differential privacy (McMahan et al. 2018; docs/privacy.md)", {
    "use": _use("DP-FedAvg"),
    "clip": Key(0.0, "S, the L2 bound on each client's update (upload - global), applied on the client; "
                "required (> 0) with dp.use; the initial bound under adaptive clipping"),
    "noise_multiplier": Key(1.0, "z: the server adds N(0, (z * S)^2) per coordinate to the sum of clipped updates",
                            **_non_negative),
    "delta": Key(1e-5, "delta of the (epsilon, delta) guarantee reported as `epsilon`",
                 check=lambda v: 0 < v < 1, check_msg="in (0, 1)"),
    "accountant": Key("rdp", "privacy accountant (Opacus): rdp (Renyi DP) or prv (privacy random variables)",
                      choices=("rdp", "prv")),
    "adaptive_clip": Section("adaptive clipping toward a quantile of the update norms (Andrew et al. 2021)", {
        "use": Key(False, "move the clip geometrically toward the target quantile each round"),
        "target_quantile": Key(0.5, "gamma, the fraction of updates meant to be unclipped",
                               check=lambda v: 0 <= v <= 1, check_msg="in [0, 1]"),
        "lr": Key(0.2, "eta_C, the clip's learning rate: S <- S * exp(-eta_C * (b - gamma))", **_positive),
        "count_noise": Key(3.0, "sigma_b, the noise std on the count of unclipped updates (the paper: clients "
                                "per round / 20); needs 2 * sigma_b > z", **_non_negative),
    }),
}))
