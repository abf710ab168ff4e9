"""The dissection report: sections, figures, the HTML page and the untangling table."""
