"""``mimkit explore RUN``: a local web page to look into a run: its held-out and training images,
original / masked / reconstruction side by side with the mask ratio, the seed and each patch in the
user's hands, the class-token attention of any block, and each image's nearest neighbours in embedding
space.

Built on Starlette (served by uvicorn) with one static HTML/JS page, not Gradio: the two are small, well
kept and already in the tree of the MLflow tracker extra, the page is written once for this layout (three
pictures over a clickable patch grid, a gallery, attention and neighbour strips) where Gradio's blocks
would fix it, and everything is served from this package, with no build step and no CDN, so the page
works offline. The server binds 127.0.0.1 unless ``--host`` says otherwise; it needs the ``explore``
extra (``pip install 'mimkit[explore]'``).

``mimkit.explore.session`` holds the run and computes what the page shows
(:class:`~mimkit.explore.session.Explorer`, usable without the server); ``mimkit.explore.app`` is the web
app; each method reconstructs with a given patch mask behind one interface,
``method.reconstruct(images, mask=...)`` (:func:`~mimkit.viz.reconstruction.reconstruct`), so the server
knows no method.
"""

from mimkit.explore.session import ExploreOptions, Explorer

__all__ = ["ExploreOptions", "Explorer"]
