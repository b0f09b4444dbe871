"""The `attack` config section, and which file holds each attack (imported only when chosen)."""
from __future__ import annotations

from fedplug.config.schema import Key, Section, register_section

# attack.type -> implementation
ATTACKS = {
    "signflip": "fedplug.attacks.signflip:SignFlip",
    "gaussian": "fedplug.attacks.gaussian:Gaussian",
    "labelflip": "fedplug.attacks.labelflip:LabelFlip",
    "replacement": "fedplug.attacks.replacement:Replacement",
    "alie": "fedplug.attacks.alie:ALittleIsEnough",
    "ipm": "fedplug.attacks.ipm:InnerProductManipulation",
}

register_section("attack", Section("Byzantine clients: a fixed set of attackers, drawn once with the run's seed, and "
                                   "what they send (docs/robustness.md)", {
    "type": Key("none", "the attack: none, signflip, gaussian, labelflip, replacement, alie (A little is enough) or "
                "ipm (inner-product manipulation)", choices=("none", *ATTACKS)),
    "fraction": Key(0.0, "attackers as a fraction of the federation's N clients: round(fraction * N) of them, drawn "
                    "once from the run's seed", check=lambda v: 0 <= v < 1, check_msg="in [0, 1)"),
    "client_ids": Key([], "the attackers by client id, instead of attack.fraction", type=list, item_type=int,
                      check=lambda v: min(v, default=0) >= 0 and len(set(v)) == len(v),
                      check_msg="distinct client ids >= 0"),
    "scale": Key(0.0, "signflip: an attacker uploads x - scale * (y - x) (x received, y trained); replacement: the "
                 "boost gamma of x + gamma * (y - x); 0: the attack's default (signflip 1, replacement n/eta: the "
                 "clients per round, FedAvg's server step eta = 1)", check=lambda v: v >= 0, check_msg=">= 0"),
    "noise_std": Key(1.0, "gaussian: standard deviation of the noise, per coordinate",
                     check=lambda v: v > 0, check_msg="> 0"),
    "noise_mode": Key("replace", "gaussian: replace the update y - x by the noise, or add the noise to it",
                      choices=("replace", "add")),
    "alie_z": Key(0.0, "alie: z in mean - z * std; 0: the paper's z_max from the round's n uploads and f attackers",
                  check=lambda v: v >= 0, check_msg=">= 0"),
    "ipm_epsilon": Key(0.1, "ipm: epsilon, the attackers upload -epsilon times the honest updates' mean",
                       check=lambda v: v > 0, check_msg="> 0"),
}))
