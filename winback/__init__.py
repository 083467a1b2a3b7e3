"""winback: find an e-commerce shop's inactive customers and win them back.

The package is laid out as the daily run goes, one subpackage per stage:

1. ``winback.ingest``        the input contract and the loader: landing files -> ``raw.*``
                              (+ ``raw.quarantine``), every row checked.
2. ``winback.quality``       great-expectations gates: a bad day stops before anything is sent.
   (dbt, in ``dbt_project/``, builds staging -> intermediate -> marts: RFM, lifecycle.)
3. ``winback.scoring``       BG/NBD and Gamma-Gamma churn and value scores for every customer.
4. ``winback.campaigns``     campaign files, audience rules, journeys, the messages they build.
5. ``winback.delivery``      providers, the send ledger (exactly once), feedback and suppressions.
6. ``winback.measurement``   each campaign window's uplift against its holdout, and its report.

Around the stages (docs/architecture.md has the tree, the data flow and recipes):

- ``winback.pipeline``       the one seam between Airflow and the stages: one function a task.
- ``winback.orchestration``  shared Airflow and cosmos configuration, alerts, task history.
- ``winback.warehouse``      connections, every table winback owns and every dbt relation
                              Python reads, binary COPY helpers.
- ``winback.summary``        the short summary of one daily run.
- ``winback.config``         settings from the environment and the project's paths.
- ``winback.cli``            the ``winback`` command line.
- ``winback.local``          the embedded PostgreSQL, a local Airflow, dbt outside Airflow.
- ``winback.simulation``     the simulated world: shop simulator, CDNOW, provider sandbox, demo.
"""
