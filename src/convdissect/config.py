"""OmegaConf resolvers our configs use; imported by the entry points and the tests."""

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "conf"

# ${repo_root:} - the checkout holding conf/ (paths.root_dir).
OmegaConf.register_new_resolver("repo_root", lambda: str(REPO_ROOT), replace=True)
