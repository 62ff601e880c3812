"""FID and KID: the InceptionV3 feature network, feature extraction and the distances."""
