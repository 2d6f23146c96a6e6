"""Torch-free reading of the published archives: safe extraction, torch-zip copying, downloads.

* :mod:`.extract`: the one checkpoint of a ``.tar.gz``/``.tar``, validated member by member,
  copied into a private folder (in a child process when started early);
* :mod:`.torchzip`: copies a torch zip checkpoint leaving the optimizer state as holes;
* :mod:`.download`: resumable, verified HTTP downloads into the archive cache.

Nothing here imports torch, so ``rnet-hub convert`` starts decompressing before it does.
"""
