"""The training playground: its settings and runs (playground), its controls and live plots (widgets), its page (page)."""
