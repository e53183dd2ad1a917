"""The science layer: numpy, torch, ase and h5py only. Never imports aiida."""
