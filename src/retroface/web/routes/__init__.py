"""Page routes, one module per group of users (each registered in :mod:`retroface.web.app`)."""
