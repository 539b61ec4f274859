"""`python -m resnext_deploy` is the `resnext-deploy` command."""

from .cli import main

if __name__ == "__main__":
    main()
