"""`python -m proxy` is `crm-proxy`."""

from .cli import main

raise SystemExit(main())
