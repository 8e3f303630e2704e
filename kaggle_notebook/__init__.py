"""What the Kaggle notebook (notebooks/melanoma_train_kaggle.ipynb) runs, one module per group of its cells, standard
library only (it runs before anything is installed). The notebook imports this package from the attached code;
each of its cells is a few calls into it, through the names below.

code.py     find the project code among the inputs, copy it to WORKING/code; session.json (`Session`)
install.py  what Kaggle's image lacks, at the project's versions, checked after the install
data.py     the ISIC 2020, ISIC 2019 and HAM10000 folders, found by search in Kaggle's mount layouts
run.py      an earlier session's run folder to resume, the launch command, running it logged, status.json
report.py   the outcome, the smoke run's verdict, the Hub push

Putting it on Kaggle and rehearsing it here is `python -m deploy kaggle push|rehearse` (deploy/kaggle_*.py).
"""

from inference import layout

from .code import CODE_MARKER, SEARCH_DEPTH, SESSION_FILE, Session, code_candidates, is_code, use_code, walk_dirs
from .data import (ISIC2019_SLUG, ISIC_SIDES, choose_ham, choose_isic, choose_isic2019, default_isic_side,
                   isic_candidates, isic_set)
from .install import NOT_INSTALLED, REQUIREMENTS, install, installed, requirement_pins, runtime, to_install
from .report import outcome_message, push_model, smoke_verdict
from .run import (choose_previous_run, epoch_seconds_total, free_port, launch_command, options, read_status, resume,
                  run_logged)

__all__ = ["CODE_MARKER", "ISIC2019_SLUG", "ISIC_SIDES", "NOT_INSTALLED", "REQUIREMENTS", "SEARCH_DEPTH", "SESSION_FILE",
           "Session",
           "choose_ham", "choose_isic", "choose_isic2019", "choose_previous_run", "code_candidates",
           "default_isic_side", "epoch_seconds_total", "free_port", "install", "installed", "is_code",
           "isic_candidates", "isic_set", "launch_command", "layout", "options", "outcome_message", "push_model",
           "read_status", "requirement_pins", "resume", "run_logged", "runtime", "smoke_verdict", "to_install",
           "use_code", "walk_dirs"]
