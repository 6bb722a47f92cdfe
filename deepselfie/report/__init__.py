"""What people look at: contact sheets, continuum images, the HTML score report (pictures.py) and
the t-SNE map (tsne_map.py)."""
