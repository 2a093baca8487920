"""Click commands. Each module imports heavy dependencies inside command bodies only."""
