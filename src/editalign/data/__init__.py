"""Edit pairs, token labels and the labelling pipeline."""
