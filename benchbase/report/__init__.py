"""`bench report`: load run folders (`load`), score cells per env family (`scoring`), group them
into entries (`entries`), aggregate with robust statistics (`stats`) into a `Report` (`model`,
`build`), and render it as text and Markdown (`text`), HTML (`html`) and Parquet (`write`)."""
