"""Put the Gradio Space on the Hugging Face Hub (`python -m deploy space`) and rehearse its build here
(`python -m deploy space rehearse`). Standard library and huggingface_hub only (gradio_client in the
rehearsal): it never imports torch or train/, so it runs from the Space's own environment.

stage.py       what the Space needs, copied into one folder, and its README front matter
space.py       the HfApi calls that create or update the Space, and their one-line errors
hub_standin.py a local HTTP server answering the Hub's download endpoints for one pinned commit
rehearse.py    the Space build done here: fresh venv, pip, `python app.py`, /predict on every example
"""
