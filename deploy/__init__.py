"""Put the Gradio Space on the Hugging Face Hub (`python -m deploy space`) and the training notebook on Kaggle
(`python -m deploy kaggle push`), and rehearse each here (`python -m deploy space rehearse`, `python -m deploy
kaggle rehearse`). Standard library and huggingface_hub only (gradio_client in the Space's rehearsal, the kaggle
CLI and papermill in subprocesses): it never imports torch or train/, so it runs from the Space's own environment.

stage.py       what the Space needs, copied into one folder, and its README front matter
space.py       the HfApi calls that create or update the Space, and their one-line errors
hub_standin.py a local HTTP server answering the Hub's download endpoints for one pinned commit
rehearse.py    the Space build done here: fresh venv, pip, `python app.py`, /predict on every example
kaggle_cli.py  `python -m deploy kaggle push|rehearse`
kaggle_push.py the code dataset and the kernel staged and uploaded with the kaggle CLI
kaggle_env.py  Kaggle's image as a local Python environment (../shared/kaggle-image), built once and cached
kaggle_rehearse.py  the notebook run as three Kaggle sessions in that environment, with a recording Hub
recording_hub.py    the rehearsal's stand-in for HfApi: records what would be uploaded, sends nothing
"""
