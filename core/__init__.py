"""The ground floor: what every other package of the suite builds on, importing none of them."""
