"""Profiles scale the work (image sizes, image counts, iterations), never the code path."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Profile:
    name: str
    embedded_size: int        # side of the square embedded-default test images
    real_limit: int | None    # first N pairs of each real dataset (None = all)
    train_iterations: int = 0  # training schedule for methods the suite trains itself
    train_batch: int = 16
    train_patch: int = 128
    seed: int = 0
    runtime_size: int = 500   # Table 4's image side
    runtime_repeats: int = 5
    runtime_compile: bool = True  # Table 4's compiled rows (compiling DID-MDN takes minutes)
    description: str = ""
    #: the detection study's scale: road-scene test / train counts and size (H, W), the
    #: detector's training schedule, bootstrap replicates, and (``detector_profile``) the
    #: profile whose detector it scores with
    detection: dict = field(default_factory=dict, compare=False, hash=False)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", embedded_size=64, real_limit=8, train_iterations=40, train_batch=4, train_patch=48,
                     runtime_size=64, runtime_repeats=1, runtime_compile=False,
                     detection=dict(n_test=12, size=(192, 576), n_boot=20, detector_profile="quick"),
                     description="CI and the regression gate: seconds to minutes on 2 CPU cores"),
    "quick": Profile("quick", embedded_size=192, real_limit=None, train_iterations=1000, train_batch=16,
                     train_patch=64,
                     detection=dict(n_test=60, size=(192, 576), n_train=400, iterations=3000, batch=4,
                                    lr_steps=(2400,), n_boot=200),
                     description="the default: the embedded default (and any real data) on a laptop CPU"),
    "long": Profile("long", embedded_size=192, real_limit=None, train_iterations=4000, train_batch=16,
                    train_patch=64,
                    detection=dict(n_test=60, size=(192, 576), n_boot=200, detector_profile="quick"),
                    description="quick with four times the derainers' training iterations (about 1.5 h per "
                                "ResGuideNet on one CPU thread); it scores with quick's detector"),
    "paper": Profile("paper", embedded_size=256, real_limit=None, train_iterations=50_000, train_batch=16,
                     train_patch=128, runtime_repeats=10,
                     detection=dict(n_test=300, size=(192, 576), n_train=2000, iterations=12000, batch=8,
                                    lr_steps=(9600,), n_boot=1000),
                     description="the paper's schedule; meant for a GPU"),
}
DEFAULT_PROFILE = "quick"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}") from None


def detection_profile(name: str) -> tuple[Profile, dict]:
    """(profile, its detection settings); ValueError for a profile without them."""
    prof = get_profile(name)
    if not prof.detection:
        raise ValueError(f"no detection settings for profile {prof.name!r}")
    return prof, prof.detection


def detector_profile(profile: str) -> str:
    """The profile whose detector (weights and training schedule) ``profile`` uses: ``smoke``
    (the CI gate) scores with the ``quick`` detector, since one trained for seconds would score
    AP ~ 0 and check nothing."""
    prof, det = detection_profile(profile)
    return det.get("detector_profile") or prof.name
