"""robustcli: measure, certify and train the robustness of PyTorch classifiers."""

__version__ = "0.1.0"
