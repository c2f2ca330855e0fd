"""`tlearn serve`: a FastAPI app (JSON API, web page, docs) under uvicorn."""
