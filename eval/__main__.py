"""``python -m eval``: the adherence study (paper Table 1); see eval/adherence.py for the options."""

from eval.adherence import main

raise SystemExit(main())
