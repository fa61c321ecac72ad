"""`bench report`: load run folders, score, aggregate with robust statistics, render text, Markdown,
HTML and Parquet."""
