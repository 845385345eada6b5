"""The shipped configs, installed as the data package ``lightning_unlearn.configs``.

This folder stays at the top of the repository; pyproject's package-dir maps it into the package
so that an install outside the checkout (a wheel) still finds a config by name, e.g.
``lightning-unlearn unlearn --config tinyworld/esd_styles_sequential`` (see
``lightning_unlearn/config_names.py``). The file exists so that ``importlib.resources`` sees a
regular package, whose files are one real folder, in the editable install and in a wheel alike.
"""
