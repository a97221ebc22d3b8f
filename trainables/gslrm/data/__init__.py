"""Multi-view mouse data in the FaceLift / GS-LRM on-disk format.

reader: one sample folder (opencv_cameras.json + RGBA PNGs) -> arrays, with a decoded-image
cache; dataset: the random-order and rig-order (mouse) datasets the loop trains on; synthetic:
the generator of articulated synthetic mice seen by the 6-camera rig; check: the dataset
checker CLI (`python -m trainables.gslrm.data.check LIST`).
"""
