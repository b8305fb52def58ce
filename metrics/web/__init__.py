"""The web UI: five dashboards served by the API, drawn in the browser with uPlot (see ``pages`` and ``boards``)."""
