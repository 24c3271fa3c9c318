"""The Hydra config tree of train.py and eval.py. Installed (``pip install .``) it is the package
``aft.configs``, which Hydra reads through its ``pkg://aft.configs`` search path (aft/resources.py);
this file makes it a package for Hydra's ``pkg://`` source, which requires one."""
