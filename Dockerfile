# clipgeom dashboard on CPU. Build: docker build -t clipgeom .
# Run:   docker run -p 8501:8501 -v "$PWD/data:/app/data" clipgeom
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CLIPGEOM_HOME=/app/data

WORKDIR /app

# CPU-only torch first (the default wheels bring CUDA, several GB), then the
# rest of the pinned requirements, which find torch already satisfied.
COPY requirements.txt .
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        torch==2.14.1 torchvision==0.29.1 \
    && pip install -r requirements.txt

COPY pyproject.toml README.md app.py ./
COPY clipgeom ./clipgeom
COPY dashboard ./dashboard
COPY pages ./pages
COPY assets ./assets
COPY .streamlit ./.streamlit
RUN pip install --no-deps . \
    && useradd --create-home --uid 1000 clipgeom \
    && mkdir -p /app/data && chown clipgeom /app/data
USER 1000

EXPOSE 8501
HEALTHCHECK CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health')"]
CMD ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0", "--server.headless=true"]
