"""Reports: building the report of a run (`build`), rendering it (`render`), plots (`plots`)."""
