"""Campaign reports people look at: plots (PNG), a small ``report.json`` and the text the
report task logs, written next to a campaign's outputs on the site (no Airflow).

* ``model``: the report (``CampaignReport``, what ``report.json`` holds), where it lives
  (``<outputs>/report/``) and the ``batchsite://<conn>/<outputs>`` URI of its Airflow Asset;
* ``plots``: pure functions from the report's numbers (and the RG histograms) to matplotlib
  figures (Agg, no pyplot state) and PNG bytes;
* ``rg`` / ``faser``: a campaign's report from what its site holds;
* ``publish``: write it on the site (each file a temp name, then a rename; ``report.json``
  last), read it back, fetch the files to a local directory.
"""
