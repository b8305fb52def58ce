"""Forecasting: seasonal statsmodels methods, chosen per series by backtest, with prediction intervals."""
