"""Networks: backbones (backbones.py) and the CAM classifier (classifier.py)."""
