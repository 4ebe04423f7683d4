# optuna-dashboard with the PostgreSQL driver.
FROM python:3.11-slim-bookworm
RUN pip install --no-cache-dir optuna==5.0.0 optuna-dashboard==0.21.0 psycopg2-binary==2.9.13
RUN useradd --create-home --uid 1000 dashboard
USER dashboard
ENTRYPOINT ["sh", "-c", "exec optuna-dashboard --host 0.0.0.0 --port 8080 \"$OPTUNA_STORAGE\""]
